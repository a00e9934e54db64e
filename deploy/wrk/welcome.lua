-- SPDX-License-Identifier: MIT
--
-- POST /{before,after}/users/{id}/welcome (API.md, pattern 3: detached background work against
-- work in a scope). `wait=true` adds ?wait=true, which makes an `after` response wait for its
-- events; the `before` route ignores it.
--
--   wrk ... -s deploy/wrk/welcome.lua URL -- variant=after events=5 delay_ms=10 wait=false

local common = dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "common.lua")

local o
local body

function init(args)
    o = common.options(args, { variant = "after", events = 5, delay_ms = 0, wait = "false",
                               max_id = 10000 })
    common.seed()
    body = string.format('{"events":%d,"delay_ms":%d}', o.events, o.delay_ms)
end

function request()
    local path = string.format("/%s/users/%d/welcome", o.variant, common.user_id(o.max_id))
    if o.wait == "true" then
        path = path .. "?wait=true"
    end
    return wrk.format("POST", path, common.json_headers, body)
end
