{{- define "hookline.name" -}}hookline{{- end -}}
{{- define "hookline.fullname" -}}{{ .Release.Name | trunc 40 | trimSuffix "-" }}-hookline{{- end -}}
{{- define "hookline.labels" -}}
app.kubernetes.io/name: hookline
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end -}}
{{- define "hookline.selector" -}}
app.kubernetes.io/name: hookline
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: manager
{{- end -}}
{{- define "hookline.serviceAccount" -}}{{ include "hookline.fullname" . }}-controller-manager{{- end -}}
