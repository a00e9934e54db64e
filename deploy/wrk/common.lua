-- SPDX-License-Identifier: MIT
--
-- What every hindsight wrk script shares: options, per-thread random streams, request ids that
-- are unique across runs, and one machine-readable result line.
--
-- A script loads this file with dofile() (wrk gives Lua no module path of ours), then defines
-- init(args) and request(), or has common.user_route() define them. Options come after wrk's
-- `--` as key=value words and are checked against the script's defaults, so a misspelt option
-- stops the run instead of being ignored:
--
--   wrk -t2 -c32 -d10s -s deploy/wrk/users.lua http://127.0.0.1:8080 -- variant=before delay_ms=20
--
-- wrk runs one Lua state per thread plus one for setup() and done(); they share nothing, so the
-- run's nonce and each thread's number travel from setup() into the thread states with
-- thread:set(). done() prints one `wrk-result` line that deploy/wrk/compare.sh and the deploy
-- tests parse; wrk's own report stays above it for people.

local common = {}

local threads = 0
local nonce = nil

-- Eight random bytes from the kernel: two runs started in the same second must not share
-- Idempotency-Keys, or the second run's new bodies would meet the first run's keys (a 422).
local function new_nonce()
    local f = assert(io.open("/dev/urandom", "rb"))
    local bytes = f:read(8)
    f:close()
    return (bytes:gsub(".", function(c) return string.format("%02x", c:byte()) end))
end

function setup(thread)
    nonce = nonce or new_nonce()
    threads = threads + 1
    thread:set("hs_thread", threads)
    thread:set("hs_nonce", nonce)
end

-- Parses `key=value` words into a copy of `defaults`; numbers stay numbers.
function common.options(args, defaults)
    local o = {}
    for k, v in pairs(defaults) do
        o[k] = v
    end
    for _, word in ipairs(args or {}) do
        local k, v = word:match("^([%w_]+)=(.*)$")
        if k == nil or defaults[k] == nil then
            error("unknown option '" .. word .. "' (known: " .. common.known(defaults) .. ")")
        end
        if type(defaults[k]) == "number" then
            v = tonumber(v) or error("option " .. k .. " wants a number, got '" .. word .. "'")
        end
        o[k] = v
    end
    return o
end

function common.known(defaults)
    local names = {}
    for k in pairs(defaults) do
        names[#names + 1] = k
    end
    table.sort(names)
    return table.concat(names, " ")
end

-- Seeds this thread's random stream; call from init(). Threads get different streams.
function common.seed()
    local n = tonumber(hs_nonce:sub(1, 7), 16)
    math.randomseed(n + 7919 * hs_thread)
end

-- A request id unique across threads and runs: usable as an Idempotency-Key.
local counter = 0
function common.unique_key(prefix)
    counter = counter + 1
    return string.format("%s-%s-%d-%d", prefix, hs_nonce, hs_thread, counter)
end

-- A random seeded user (API.md, "Data": users 1..10000).
function common.user_id(max_id)
    return math.random(1, max_id)
end

common.json_headers = { ["Content-Type"] = "application/json" }

-- Defines init() and request() for a GET user route: /<variant>/users/<id><suffix>?delay_ms=,
-- a random seeded user per request (users.lua, dashboard.lua).
function common.user_route(suffix)
    local o

    function init(args)
        o = common.options(args, { variant = "after", delay_ms = 0, max_id = 10000 })
        common.seed()
    end

    function request()
        local path = string.format("/%s/users/%d%s?delay_ms=%d", o.variant,
                                   common.user_id(o.max_id), suffix, o.delay_ms)
        return wrk.format("GET", path)
    end
end

function done(summary, latency, requests)
    local e = summary.errors
    local secs = summary.duration / 1e6
    io.write(string.format(
        "wrk-result requests=%d duration_s=%.3f rps=%.1f p50_ms=%.3f p90_ms=%.3f p99_ms=%.3f " ..
        "max_ms=%.3f non2xx=%d connect=%d read=%d write=%d timeout=%d\n",
        summary.requests, secs, summary.requests / secs,
        latency:percentile(50) / 1000, latency:percentile(90) / 1000,
        latency:percentile(99) / 1000, latency.max / 1000,
        e.status, e.connect, e.read, e.write, e.timeout))
end

return common
