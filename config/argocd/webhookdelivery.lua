-- Argo CD health of a hookline.dev WebhookDelivery (resource.customizations.health.hookline.dev_WebhookDelivery).
local hs = {status = "Progressing", message = "pending"}
if obj.status == nil or obj.status.phase == nil then
  return hs
end
local phase = obj.status.phase
hs.message = phase
if phase == "Succeeded" then
  hs.status = "Healthy"
elseif phase == "Failed" or phase == "Exhausted" then
  hs.status = "Degraded"
end
if obj.status.conditions ~= nil then
  for _, c in ipairs(obj.status.conditions) do
    if c.type == "Succeeded" and c.message ~= nil then
      hs.message = phase .. ": " .. c.message
    end
  end
end
return hs
