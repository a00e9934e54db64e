-- SPDX-License-Identifier: MIT
--
-- GET /{before,after}/users/{id}?delay_ms= (API.md, pattern 0: don't block the loop), with a
-- random seeded user per request so that the database does real lookups, not one hot row.
--
--   wrk ... -s deploy/wrk/users.lua URL -- variant=after delay_ms=0 max_id=10000

local common = dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "common.lua")

common.user_route("")
