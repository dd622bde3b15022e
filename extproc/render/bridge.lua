-- extproc fast path: route every request from a table the extproc service publishes.
--
-- Rendered into the Envoy bootstrap by extproc/render/bootstrap.py; the words in @@...@@
-- are filled in there from extproc/wire.py. One Lua VM runs per Envoy worker, so the
-- file-level locals below are per-worker state.
--
-- Per request: take the route's service (route metadata; on a weighted route, the cluster
-- this script picks by the route's weights, see pick_cluster), refresh its table when stale
-- (one request per worker per TTL pays a synchronous call to the service's sync
-- endpoint), choose a host with the service's load balancer (below) and select it with
-- setUpstreamOverrideHost on the service's EDS cluster. A client cannot influence that
-- choice; if this script fails, Envoy's own load balancer on the same cluster (Istio's
-- priorities, ejected hosts marked unhealthy) picks.
--
-- The choice runs over the table's hosts and weights as they are: the weights already hold
-- the priority load and panic (ClusterState.route_weights). Per worker, as Envoy's workers
-- each run their own load balancer (source/extensions/load_balancing_policies/):
--   ROUND_ROBIN   equal weights: plain rotation from a per-worker random start (round_robin_lb.h
--                 unweightedHostPick, rr_indexes_ starting at seed_, kept across refreshes);
--                 unequal: an earliest-deadline-first schedule, deadline += 1/weight, started
--                 seed % n picks in (EdfLoadBalancerBase::refresh, EdfScheduler::createWithPicks),
--                 rebuilt when the table's version changes.
--   LEAST_REQUEST equal weights: two uniform draws with replacement, the second wins only with
--                 strictly fewer active requests (least_request_lb.cc unweightedHostPickNChoices,
--                 choice_count 2); unequal: the EDF schedule with weight / (active + 1)
--                 (hostWeight, active_request_bias 1.0), each host re-queued with its weight of
--                 the moment it is picked. Active requests are this worker's (Envoy's rq_active
--                 is the host's, shared by its workers; a Lua VM sees only its own): counted
--                 when a request is routed (on a table of two hosts or more: one host is no
--                 choice), released at its response headers, or, for a stream that ends
--                 without one (the client went away), once Lua has collected its handle
--                 (see sweep).
--   RANDOM        a draw by weight (the table gives RANDOM's hosts equal shares in a priority),
--                 also for a table that names no algorithm (a service older than this script).
--
-- Per response: count successes per host (sent with the next sync); report a failure at
-- once and install the table that comes back. Outcomes are attributed to the host that
-- really served the last attempt (%UPSTREAM_HOST%); a request retried away from the host
-- we chose counts as a failure of that host. The rules are the ext_proc path's
-- (extproc/core/outcome.py); tests/attribution.py is the one table both are tested on.

local SYNC_CLUSTER = "@@SYNC_CLUSTER@@"
local SYNC_TIMEOUT_MS = @@SYNC_TIMEOUT_MS@@
local UP_HEADER = "@@UP_HEADER@@"
local FLAGS_HEADER = "@@FLAGS_HEADER@@"
local CLUSTER_HEADER = "@@CLUSTER_HEADER@@"
local METADATA_NS = "@@LUA_METADATA_NAMESPACE@@"
-- Empty unless the service is reached over TCP (extproc serve --secret-file).
local SECRET = @@SECRET@@

-- service -> {version, ttl, exp, lb, hosts = {...}, weights = {...}, cum = {...}, total,
--             equal (all weights equal), edf (the schedule, built on first use)}
local tables = {}
local successes = {}   -- service -> {host -> count}
local overflows = {}   -- service -> requests Envoy refused over a connection-pool limit (UO)
local rr = {}          -- service -> the round-robin index (survives new tables, as in Envoy)
-- service -> {counts = {host -> requests routed there and not answered yet},
--             hosts = {request id -> the host it was routed to}}
local active = {}
-- request id -> its request handle, held weakly: Envoy lets go of it when the stream ends.
local handles = setmetatable({}, {__mode = "v"})
local last_id = 0
-- A weighted route's "weights" metadata -> {names = {...}, cum = {...}, total}.
local weighted = {}
local WORKER = string.sub(tostring({}), 8)

math.randomseed(os.time() + (tonumber(WORKER, 16) or 0) % 100000)
-- Envoy draws one seed per load balancer (EdfLoadBalancerBase::seed_); one per worker here.
local SEED = math.random(0, 2147483646)

local function parse(body, now)
  local t = nil
  for line in string.gmatch(body, "[^\n]+") do
    local a, b = string.match(line, "^(%S+) (%d+)$")
    if a ~= nil then
      if t == nil then
        t = {version = tonumber(a), ttl = tonumber(b), hosts = {}, weights = {}, cum = {},
          total = 0, equal = true}
        t.exp = now + t.ttl
      else
        local weight = tonumber(b)
        local n = #t.hosts + 1
        t.total = t.total + weight
        t.hosts[n] = a
        t.weights[n] = weight
        t.cum[n] = t.total
        if weight ~= t.weights[1] then
          t.equal = false
        end
      end
    elseif t ~= nil then
      -- outlierDetectionHttpErrorCodes: the statuses Envoy's detector counts as errors.
      local list = string.match(line, "^codes=([%d,]+)$")
      if list ~= nil then
        t.codes = {}
        for c in string.gmatch(list, "%d+") do
          t.codes[tonumber(c)] = true
        end
      end
      -- loadBalancer.simple: ROUND_ROBIN, LEAST_REQUEST or RANDOM; ENVOY: Envoy picks.
      local lb = string.match(line, "^lb=([%u_]+)$")
      if lb ~= nil then
        t.lb = lb
      end
    end
  end
  return t
end

local function pending(service)
  local lines = {}
  local counts = successes[service]
  if counts ~= nil then
    for host, n in pairs(counts) do
      lines[#lines + 1] = "s " .. host .. " " .. n .. "\n"
    end
    successes[service] = nil
  end
  local refused = overflows[service]
  if refused ~= nil then
    lines[#lines + 1] = "o - " .. refused .. "\n"
    overflows[service] = nil
  end
  return table.concat(lines)
end

-- One synchronous round trip to the sync endpoint; installs the answer if it is not older
-- than what this worker holds. Returns false when the service could not be reached
-- (fail-static: the caller keeps routing on the last table).
local function sync(handle, service, extra, now)
  local request = {
    [":method"] = "POST",
    [":path"] = "@@SYNC_PATH@@",
    [":authority"] = "@@SYNC_AUTHORITY@@",
    ["@@SERVICE_HEADER@@"] = service,
    ["@@WORKER_HEADER@@"] = WORKER,
  }
  if SECRET ~= "" then
    request["@@SECRET_HEADER@@"] = SECRET
  end
  local headers, body = handle:httpCall(SYNC_CLUSTER, request, pending(service) .. extra,
    SYNC_TIMEOUT_MS)
  if headers == nil or headers[":status"] ~= "200" or body == nil then
    return false
  end
  local t = parse(body, now)
  local current = tables[service]
  if t ~= nil and (current == nil or t.version >= current.version) then
    if current ~= nil and t.version == current.version and #t.hosts == #current.hosts then
      t.edf = current.edf  -- the same table again: its schedule goes on
    end
    tables[service] = t
  end
  return true
end

-- A draw by weight over the cumulative weights.
local function draw(t)
  local r = math.random(t.total)
  local lo, hi = 1, #t.cum
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if t.cum[mid] < r then lo = mid + 1 else hi = mid end
  end
  return lo
end

-- A weighted route's cluster for this request, drawn as Envoy's weighted_clusters draws it:
-- uniform over the total weight, each cluster owning an interval in the route's order
-- (WeightedClusterSpecifierPlugin::pickWeightedCluster; measured on Envoy 1.40: not health
-- aware, a cluster with no healthy host keeps its share). The pick goes into CLUSTER_HEADER,
-- overwriting whatever the client sent, and the route cache is cleared: the router re-matches
-- the request to the pick's sibling route (render/routes.py), which has only that cluster
-- and removes the header before the upstream. When the weights cannot be read the header is
-- removed and nil returned: Envoy's own weighted pick routes, never a client's choice. The
-- route metadata this filter sees stays the first route's (measured), so the pick is kept
-- here, not read back.
local function pick_cluster(handle, spec)
  local w = weighted[spec]
  if w == nil then
    w = {names = {}, cum = {}, total = 0}
    for name, weight in string.gmatch(spec, "(%S+) (%d+)") do
      w.total = w.total + tonumber(weight)
      w.names[#w.names + 1] = name
      w.cum[#w.cum + 1] = w.total
    end
    weighted[spec] = w
  end
  local name = nil
  if w.total > 0 then
    name = w.names[draw(w)]
  end
  local headers = handle:headers()
  if name == nil then
    headers:remove(CLUSTER_HEADER)
  else
    headers:replace(CLUSTER_HEADER, name)
  end
  handle:clearRouteCache()
  return name
end

-- The weight a host is (re-)queued with: its table weight, or for LEAST_REQUEST (counts
-- given) that weight / (active + 1).
local function edf_weight(t, i, counts)
  if counts == nil then
    return t.weights[i]
  end
  return t.weights[i] / ((counts[t.hosts[i]] or 0) + 1)
end

-- Pop the earliest deadline (ties: the earlier queued), move the clock to it, queue that
-- host again at clock + 1/weight (Envoy's EdfScheduler). A linear scan: tables are small.
local function edf_next(e, t, counts)
  local deadline, order = e.deadline, e.order
  local best = 1
  for i = 2, #deadline do
    local d = deadline[i]
    if d < deadline[best] or (d == deadline[best] and order[i] < order[best]) then
      best = i
    end
  end
  e.now = deadline[best]
  e.queued = e.queued + 1
  deadline[best] = e.now + 1 / edf_weight(t, best, counts)
  order[best] = e.queued
  return best
end

local function edf_pick(t, counts)
  local e = t.edf
  if e == nil then
    e = {now = 0, queued = #t.hosts, deadline = {}, order = {}}
    for i = 1, #t.hosts do
      e.deadline[i] = 1 / edf_weight(t, i, counts)
      e.order[i] = i
    end
    for _ = 1, SEED % #t.hosts do
      edf_next(e, t, counts)
    end
    t.edf = e
  end
  return edf_next(e, t, counts)
end

-- The index of the host for this request, per the table's lb (see the top of this file).
local function pick(service, t, counts)
  local n = #t.hosts
  if n == 1 then
    return 1  -- one eligible host: the common case, no choice to make
  end
  local lb = t.lb
  if lb == "ROUND_ROBIN" then
    if not t.equal then
      return edf_pick(t, nil)
    end
    local index = rr[service] or SEED
    rr[service] = index + 1
    return index % n + 1
  elseif lb == "LEAST_REQUEST" then
    if not t.equal then
      return edf_pick(t, counts)
    end
    local hosts = t.hosts
    local candidate = math.random(n)
    local sampled = math.random(n)
    if (counts[hosts[sampled]] or 0) < (counts[hosts[candidate]] or 0) then
      candidate = sampled
    end
    return candidate
  end
  return draw(t)
end

-- Count one active request of a service on host; its id.
local function hold(handle, requests, host)
  requests.counts[host] = (requests.counts[host] or 0) + 1
  last_id = last_id + 1
  requests.hosts[last_id] = host
  handles[last_id] = handle
  return last_id
end

-- Give back one active request (its response came, or its stream ended without one).
local function release(requests, id)
  local host = requests.hosts[id]
  if host == nil then
    return
  end
  requests.hosts[id] = nil
  handles[id] = nil
  local n = requests.counts[host]
  if n > 1 then
    requests.counts[host] = n - 1
  else
    requests.counts[host] = nil
  end
end

-- Release the requests whose streams ended without response headers (the client went
-- away): those never reach envoy_on_response, and Lua has no hook for a stream's end, but
-- Envoy lets go of the request handle then, and once Lua has collected it (a collection
-- comes every few hundred requests of a worker) its weak entry is gone. Runs once per TTL.
local function sweep()
  for _, requests in pairs(active) do
    for id in pairs(requests.hosts) do
      if handles[id] == nil then
        release(requests, id)
      end
    end
  end
end

function envoy_on_request(handle)
  local metadata = handle:metadata()
  local service = metadata:get("service")
  if service == nil then
    local spec = metadata:get("weights")
    if spec == nil then
      return
    end
    service = pick_cluster(handle, spec)
    if service == nil then
      return
    end
  end
  local now = handle:timestamp()
  local t = tables[service]
  if t == nil or now >= t.exp then
    if t ~= nil then
      t.exp = now + t.ttl  -- other requests keep the current table while this one refreshes
    end
    sweep()
    sync(handle, service, "", now)
    t = tables[service]
    if t == nil then
      -- The service has never answered this worker: no override, so Envoy's own load
      -- balancer routes over the last EDS assignment (Istio's priorities, the service's last
      -- ejections). Never a client's choice.
      return
    end
  end
  if t.lb == "ENVOY" then
    -- Envoy's own balancer picks (a consistent-hash ring, slow start): no override. The
    -- response counts a clean answer in the success batch; the router's upstream log
    -- reports every other attempt to the service.
    handle:streamInfo():dynamicMetadata():set(METADATA_NS, "pick", "- " .. service)
    return
  end
  if t.total == 0 then
    handle:respond({[":status"] = "503", ["content-type"] = "text/plain"}, "no healthy upstream")
    return
  end
  local requests = nil
  if t.lb == "LEAST_REQUEST" and t.hosts[2] ~= nil then
    requests = active[service]
    if requests == nil then
      requests = {counts = {}, hosts = {}}
      active[service] = requests
    end
  end
  local host = t.hosts[pick(service, t, requests and requests.counts)]
  handle:setUpstreamOverrideHost(host, false)
  -- One value carries them all, so the response path needs a single lookup:
  -- "<host> <service>", and " <id>" when the request counts as active.
  local value = host .. " " .. service
  if requests ~= nil then
    value = value .. " " .. hold(handle, requests, host)
  end
  handle:streamInfo():dynamicMetadata():set(METADATA_NS, "pick", value)
end

-- What the final attempt reports to the service when Envoy's outlier detector counts it on
-- its own, or nil for a success (sent later as a count) or when it records nothing (no
-- healthy upstream, no upstream at all; an overflow never gets here, see envoy_on_response).
-- An attempt that got no answer carries a last word: c (no connection), r (reset or
-- malformed answer after connecting), t (timeout). An answer counts when it is a 5xx or,
-- with the service's error codes (codes), when it is listed.
local function failure_code(status, flags, codes)
  if flags ~= nil and flags ~= "" and flags ~= "-" then
    for flag in string.gmatch(flags, "[^,]+") do
      if flag == "UF" then return "503 c" end
      -- UPE: a malformed answer, which Envoy replies 502 to and counts as a reset.
      if flag == "UC" or flag == "UR" or flag == "UPE" then return "503 r" end
      if flag == "UT" then return "504 t" end
    end
    if status >= 500 and (string.find(flags, "UH")
        or string.find(flags, "NR") or string.find(flags, "NC")) then
      return nil
    end
  end
  if codes ~= nil then
    if codes[status] then return status end
    return nil
  end
  if status >= 500 and status <= 599 then return status end
  return nil
end

-- One more success of host on service, sent as a count with the worker's next sync.
local function count_success(service, host)
  local counts = successes[service]
  if counts == nil then
    counts = {}
    successes[service] = counts
  end
  counts[host] = (counts[host] or 0) + 1
end

function envoy_on_response(handle)
  local headers = handle:headers()
  -- "<host of the last attempt> <number of attempts>" (%UPSTREAM_HOST%, "-" for none).
  local up_value = headers:get(UP_HEADER)
  local status = tonumber(headers:get(":status")) or 0
  headers:remove(UP_HEADER)
  local flags = nil
  if status >= 400 then
    -- Only Envoy's own replies carry flags, and those are never 1xx-3xx.
    flags = headers:get(FLAGS_HEADER)
    if flags ~= nil then
      headers:remove(FLAGS_HEADER)
    end
  end
  local meta = handle:streamInfo():dynamicMetadata():get(METADATA_NS)
  local pick_value = meta and meta["pick"]
  if pick_value == nil then
    return
  end
  -- Plain string.find and string.sub only: LuaJIT compiles them, while string.match is not
  -- compiled and would take this per-response path out of the JIT.
  local space = string.find(pick_value, " ", 1, true)
  if space == nil then
    return
  end
  local chosen = string.sub(pick_value, 1, space - 1)
  local service = string.sub(pick_value, space + 1)
  local id_space = string.find(service, " ", 1, true)
  if id_space ~= nil then
    local id = tonumber(string.sub(service, id_space + 1))
    service = string.sub(service, 1, id_space - 1)
    local requests = active[service]
    if requests ~= nil then
      release(requests, id)
    end
  end
  local up, attempts = nil, 1
  if up_value ~= nil then
    space = string.find(up_value, " ", 1, true)
    if space ~= nil then
      local host = string.sub(up_value, 1, space - 1)
      if host ~= "-" and host ~= "" then
        up = host
      end
      attempts = tonumber(string.sub(up_value, space + 1)) or 1
    end
  end
  if chosen == "-" then
    -- Envoy picked: the last attempt's clean answer (2xx, 3xx, no flag) is a success of the
    -- host that served it; the upstream log has sent the service every other attempt.
    if up ~= nil and status >= 200 and status < 400 then
      count_success(service, up)
    end
    return
  end
  if flags ~= nil and string.find(flags, "UO", 1, true) then
    -- Over a connection-pool limit: Envoy's own 503, which its detector does not count
    -- (router.cc onUpstreamReset skips an overflow). Counted, sent with the next sync.
    overflows[service] = (overflows[service] or 0) + 1
    return
  end
  local report = ""
  if up ~= nil and up ~= chosen then
    if attempts > 1 then
      -- The override sends the first attempt to the chosen host; another host served the
      -- last one, so Envoy retried away from the chosen host after it failed.
      report = "e " .. chosen .. " 503 c\n"
    end
    -- One attempt on another host: Envoy did not honour the override, because EDS already
    -- marks the chosen host UNHEALTHY (the service ejected it after this worker's table was
    -- made). The chosen host did nothing.
  elseif up ~= nil and attempts > 1 then
    -- Retries that could not leave the chosen host: each earlier attempt failed on it.
    for _ = 2, attempts do
      report = report .. "e " .. chosen .. " 503 c\n"
    end
  end
  local t = tables[service]
  local code = failure_code(status, flags, t and t.codes)
  if up ~= nil then
    if code ~= nil then
      report = report .. "e " .. up .. " " .. code .. "\n"
    elseif report == "" then
      count_success(service, up)
      return
    else
      report = report .. "s " .. up .. " 1\n"
    end
  end
  if report ~= "" then
    sync(handle, service, report, handle:timestamp())
  end
end
