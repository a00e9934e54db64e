-- SPDX-License-Identifier: MIT
--
-- GET /{before,after}/users/{id}?delay_ms= (API.md, pattern 0: don't block the loop), with a
-- random seeded user per request so that the database does real lookups, not one hot row.
--
--   wrk ... -s deploy/wrk/users.lua URL -- variant=after delay_ms=0 max_id=10000

local common = dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "common.lua")

local o

function init(args)
    o = common.options(args, { variant = "after", delay_ms = 0, max_id = 10000 })
    common.seed()
end

function request()
    local path = string.format("/%s/users/%d?delay_ms=%d", o.variant, common.user_id(o.max_id),
                               o.delay_ms)
    return wrk.format("GET", path)
end
