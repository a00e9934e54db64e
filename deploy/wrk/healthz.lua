-- SPDX-License-Identifier: MIT
--
-- GET /healthz (liveness; never touches the database). `path=` points it at another probe, such
-- as /readyz, with the same result line.
--
--   wrk -t1 -c8 -d10s -s deploy/wrk/healthz.lua http://127.0.0.1:8080 [-- path=/readyz]

local common = dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "common.lua")

local req

function init(args)
    local o = common.options(args, { path = "/healthz" })
    req = wrk.format("GET", o.path)
end

function request()
    return req
end
