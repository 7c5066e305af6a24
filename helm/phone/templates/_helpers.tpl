{{/* The release's name prefix for every object. */}}
{{- define "phone.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "phone.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Selector labels of one component: (dict "root" $ "component" "router") */}}
{{- define "phone.selector" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "phone.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "phone.url" -}}
http://{{ include "phone.fullname" .root }}-{{ .component }}:{{ .port }}
{{- end -}}

{{/* The bucket the services use: the value, or the try-out MinIO's. */}}
{{- define "phone.s3.bucket" -}}
{{- if .Values.s3.bucket -}}{{ .Values.s3.bucket }}{{- else if .Values.minio.enabled -}}phone{{- end -}}
{{- end -}}

{{/* "true" when the mailers share their outbox (S3) and elect the sender by a Lease. */}}
{{- define "phone.mailer.lease" -}}
{{- if and .Values.mailer.kubernetesApi (include "phone.s3.bucket" .) -}}true{{- end -}}
{{- end -}}

{{- define "phone.s3.endpoint" -}}
{{- if .Values.s3.endpoint -}}{{ .Values.s3.endpoint }}{{- else if and .Values.minio.enabled (not .Values.s3.bucket) -}}http://{{ include "phone.fullname" . }}-minio:9000{{- end -}}
{{- end -}}

{{- define "phone.s3.secretName" -}}
{{- if .Values.s3.existingSecret -}}{{ .Values.s3.existingSecret }}{{- else -}}{{ include "phone.fullname" . }}-s3{{- end -}}
{{- end -}}

{{- define "phone.smtp.secretName" -}}
{{- if .Values.smtp.existingSecret -}}{{ .Values.smtp.existingSecret }}{{- else -}}{{ include "phone.fullname" . }}-smtp{{- end -}}
{{- end -}}

{{/* Hardening every container gets. */}}
{{- define "phone.containerSecurity" -}}
securityContext:
  runAsNonRoot: true
  runAsUser: 10001
  runAsGroup: 10001
  readOnlyRootFilesystem: true
  allowPrivilegeEscalation: false
  capabilities:
    drop: ["ALL"]
  seccompProfile:
    type: RuntimeDefault
{{- end -}}

{{- define "phone.podSecurity" -}}
securityContext:
  runAsNonRoot: true
  runAsUser: 10001
  runAsGroup: 10001
  fsGroup: 10001
  seccompProfile:
    type: RuntimeDefault
{{- end -}}

{{/* Environment every service shares: (dict "root" $ "grpcPort" 50051 "adminPort" 9090 "drainDeadline" "30s" "config" true "data" true) */}}
{{- define "phone.commonEnv" -}}
- name: PHONE_GRPC_BIND
  value: "0.0.0.0:{{ .grpcPort }}"
- name: PHONE_ADMIN_BIND
  value: "0.0.0.0:{{ .adminPort }}"
- name: PHONE_DRAIN_DELAY
  value: "5s"
- name: PHONE_DRAIN_DEADLINE
  value: {{ .drainDeadline | default "30s" | quote }}
{{- if .config }}
- name: PHONE_CONFIG_DIR
  value: /etc/phone
{{- end }}
{{- if .data }}
- name: PHONE_DATA_DIR
  value: /var/lib/phone
{{- end }}
{{- if .root.Values.otel.endpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ .root.Values.otel.endpoint | quote }}
{{- end }}
{{- end -}}

{{/* S3 settings for voicemail and mailer. */}}
{{- define "phone.s3Env" -}}
{{- $bucket := include "phone.s3.bucket" . -}}
{{- if $bucket }}
- name: PHONE_S3_BUCKET
  value: {{ $bucket | quote }}
- name: PHONE_S3_REGION
  value: {{ .Values.s3.region | quote }}
{{- with include "phone.s3.endpoint" . }}
- name: PHONE_S3_ENDPOINT
  value: {{ . | quote }}
{{- end }}
{{- if or .Values.s3.pathStyle .Values.minio.enabled }}
- name: PHONE_S3_PATH_STYLE
  value: "true"
{{- end }}
{{- if or .Values.s3.accessKeyId .Values.s3.existingSecret .Values.minio.enabled }}
- name: PHONE_S3_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ include "phone.s3.secretName" . }}
      key: access-key-id
- name: PHONE_S3_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "phone.s3.secretName" . }}
      key: secret-access-key
{{- end }}
{{- end }}
{{- end -}}

{{/* The ConfigMap that holds extensions.conf. */}}
{{- define "phone.dialplanConfigMap" -}}
{{ .Values.config.existingConfigMap | default (printf "%s-config" (include "phone.fullname" .)) }}
{{- end -}}

{{/* The config volume: extensions.conf from the ConfigMap, sip.conf and voicemail.conf from the Secret. */}}
{{- define "phone.configVolume" -}}
{{ include "phone.projectedConfig" . }}
- name: data
  emptyDir: {}
{{- end -}}

{{/* The configuration files alone, as one volume. */}}
{{- define "phone.projectedConfig" -}}
- name: config
  projected:
    sources:
      - configMap:
          name: {{ include "phone.dialplanConfigMap" . }}
          items:
            - key: extensions.conf
              path: extensions.conf
      - secret:
          name: {{ .Values.config.existingSecret | default (printf "%s-config" (include "phone.fullname" .)) }}
          items:
            - key: sip.conf
              path: sip.conf
            - key: voicemail.conf
              path: voicemail.conf
{{- end -}}

{{- define "phone.configMounts" -}}
- name: config
  mountPath: /etc/phone
  readOnly: true
- name: data
  mountPath: /var/lib/phone
{{- end -}}

{{/* Readiness and start-up on the gRPC health service (NOT_SERVING while draining);
liveness on /livez, which stays up through the drain. (dict "port" grpc "admin" admin) */}}
{{- define "phone.grpcProbes" -}}
readinessProbe:
  grpc:
    port: {{ .port }}
  periodSeconds: 5
  failureThreshold: 2
livenessProbe:
  httpGet:
    path: /livez
    port: {{ .admin }}
  periodSeconds: 10
  failureThreshold: 6
startupProbe:
  grpc:
    port: {{ .port }}
  periodSeconds: 2
  failureThreshold: 30
{{- end -}}
