{{/* Names, labels and the pieces every Switchyard pod shares. */}}

{{- define "switchyard.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "switchyard.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else if contains (include "switchyard.name" .) .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name (include "switchyard.name" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{/* The name the NATS subchart gives its resources (its own "nats.fullname" rule). */}}
{{- define "switchyard.natsFullname" -}}
{{- if .Values.nats.fullnameOverride }}
{{- .Values.nats.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else if contains "nats" .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-nats" .Release.Name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{/* nats.url for every process: natsUrl, else the subchart's client Service. */}}
{{- define "switchyard.natsUrl" -}}
{{- if .Values.natsUrl }}
{{- .Values.natsUrl }}
{{- else if .Values.nats.enabled }}
{{- printf "nats://%s.%s.svc:%d" (include "switchyard.natsFullname" .) .Release.Namespace (int .Values.nats.config.nats.port) }}
{{- else }}
{{- fail "natsUrl is required when nats.enabled is false" }}
{{- end }}
{{- end }}

{{/* The NATS monitoring endpoint KEDA reads consumer lag from: on a cluster, KEDA finds the
     consumer's leader as <server name>.<this host>, which the headless Service resolves. */}}
{{- define "switchyard.natsMonitoringEndpoint" -}}
{{- if .Values.worker.autoscaling.natsMonitoringEndpoint }}
{{- .Values.worker.autoscaling.natsMonitoringEndpoint }}
{{- else if .Values.nats.enabled }}
{{- printf "%s-headless.%s.svc.cluster.local:%d" (include "switchyard.natsFullname" .) .Release.Namespace (int .Values.nats.config.monitor.port) }}
{{- else }}
{{- fail "worker.autoscaling.natsMonitoringEndpoint is required when nats.enabled is false" }}
{{- end }}
{{- end }}

{{- define "switchyard.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "switchyard.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: switchyard
{{- end }}

{{/* Selector labels of one component (gateway, worker, tools, memory); call with
     (dict "root" $ "component" "gateway"). */}}
{{- define "switchyard.selectorLabels" -}}
app.kubernetes.io/name: {{ include "switchyard.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "switchyard.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{- define "switchyard.secretName" -}}
{{- if .Values.secrets.existingSecret }}
{{- .Values.secrets.existingSecret }}
{{- else if .Values.secrets.values }}
{{- printf "%s-keys" (include "switchyard.fullname" .) }}
{{- end }}
{{- end }}

{{/* The environment every process gets, as list items: where NATS is, how many replicas
     streams have, the configuration file, logging, and the component's own `env`. Call with
     (dict "root" $ "component" "worker"). */}}
{{- define "switchyard.envVars" -}}
- name: SWITCHYARD_CONFIG
  value: /etc/switchyard/switchyard.toml
- name: SWITCHYARD__NATS__URL
  value: {{ include "switchyard.natsUrl" .root | quote }}
- name: SWITCHYARD__NATS__REPLICAS
  value: {{ .root.Values.streamReplicas | quote }}
- name: RUST_LOG
  value: {{ .root.Values.logLevel | quote }}
{{- if .root.Values.logJson }}
- name: SWITCHYARD_LOG_JSON
  value: "true"
{{- end }}
{{- with (get .root.Values .component).env }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* The keys Secret, as envFrom: every process loads the whole configuration, and every
     variable it names (api_key_env, ...) must be set, so every pod gets them. */}}
{{- define "switchyard.envFrom" -}}
{{- with include "switchyard.secretName" . }}
envFrom:
  - secretRef:
      name: {{ . }}
{{- end }}
{{- end }}

{{- define "switchyard.containerSecurityContext" -}}
securityContext:
  runAsNonRoot: true
  runAsUser: 10001
  runAsGroup: 10001
  allowPrivilegeEscalation: false
  readOnlyRootFilesystem: true
  capabilities:
    drop: ["ALL"]
  seccompProfile:
    type: RuntimeDefault
{{- end }}

{{/* The pod's scheduling settings and the config checksum (a changed switchyard.toml rolls
     the pods). Call with (dict "root" $ "component" "worker"). */}}
{{- define "switchyard.podMeta" -}}
metadata:
  labels:
    {{- include "switchyard.selectorLabels" . | nindent 4 }}
  annotations:
    checksum/config: {{ include (print .root.Template.BasePath "/configmap.yaml") .root | sha256sum }}
    {{- with .root.Values.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
{{- end }}

{{- define "switchyard.podCommon" -}}
{{- with .root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
automountServiceAccountToken: false
{{- $c := get .root.Values .component }}
{{- with $c.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $c.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $c.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
topologySpreadConstraints:
  - maxSkew: 1
    topologyKey: kubernetes.io/hostname
    whenUnsatisfiable: ScheduleAnyway
    labelSelector:
      matchLabels:
        {{- include "switchyard.selectorLabels" . | nindent 8 }}
{{- end }}

{{/* Volumes every process mounts: the configuration and a scratch /tmp (the root filesystem
     is read-only). */}}
{{- define "switchyard.volumeMounts" -}}
- name: config
  mountPath: /etc/switchyard
  readOnly: true
- name: tmp
  mountPath: /tmp
{{- end }}

{{- define "switchyard.volumes" -}}
- name: config
  configMap:
    name: {{ include "switchyard.fullname" . }}-config
- name: tmp
  emptyDir: {}
{{- end }}
