-- Argo CD health of a hookline.dev WebhookEvent (resource.customizations.health.hookline.dev_WebhookEvent).
local hs = {status = "Progressing", message = "fan-out pending"}
if obj.status == nil or obj.status.conditions == nil then
  return hs
end
for _, c in ipairs(obj.status.conditions) do
  if c.type == "Complete" then
    hs.message = c.message or c.reason
    if c.status == "True" and (c.reason == "AllSucceeded" or c.reason == "NoEndpoints") then
      hs.status = "Healthy"
    elseif c.status == "True" then
      hs.status = "Degraded"
    end
  end
end
return hs
