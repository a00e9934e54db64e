-- SPDX-License-Identifier: MIT
--
-- GET /{before,after}/users/{id}/dashboard?delay_ms= (API.md, pattern 2: user, settings and
-- recent transfers, one after another or joined).
--
--   wrk ... -s deploy/wrk/dashboard.lua URL -- variant=after delay_ms=20 max_id=10000

local common = dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "common.lua")

local o

function init(args)
    o = common.options(args, { variant = "after", delay_ms = 0, max_id = 10000 })
    common.seed()
end

function request()
    local path = string.format("/%s/users/%d/dashboard?delay_ms=%d", o.variant,
                               common.user_id(o.max_id), o.delay_ms)
    return wrk.format("GET", path)
end
