-- SPDX-License-Identifier: MIT
--
-- GET /{before,after}/users/{id}/dashboard?delay_ms= (API.md, pattern 2: user, settings and
-- recent transfers, one after another or joined).
--
--   wrk ... -s deploy/wrk/dashboard.lua URL -- variant=after delay_ms=20 max_id=10000

local common = dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "common.lua")

common.user_route("/dashboard")
