-- Argo CD health of a hookline.dev WebhookEndpoint (resource.customizations.health.hookline.dev_WebhookEndpoint).
local hs = {status = "Progressing", message = "waiting for the hookline manager"}
if obj.status == nil or obj.status.conditions == nil then
  return hs
end
if obj.metadata.generation ~= nil and obj.status.observedGeneration ~= obj.metadata.generation then
  hs.message = "the manager has not observed the latest spec yet"
  return hs
end
for _, c in ipairs(obj.status.conditions) do
  if c.type == "Ready" then
    hs.message = c.message or c.reason
    if c.status == "True" and c.reason == "Paused" then
      hs.status = "Suspended"
    elseif c.status == "True" then
      hs.status = "Healthy"
    elseif c.status == "False" then
      hs.status = "Degraded"
    end
  end
end
return hs
