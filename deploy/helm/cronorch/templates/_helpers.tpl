{{/* Chart name, truncated to a DNS label. */}}
{{- define "cronorch.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified name: the release name, plus the chart name unless it holds it already. */}}
{{- define "cronorch.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "cronorch.selectorLabels" -}}
app.kubernetes.io/name: {{ include "cronorch.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "cronorch.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "cronorch.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* The image; the tag defaults to the chart's appVersion. */}}
{{- define "cronorch.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "cronorch.chartSecretName" -}}
{{- printf "%s-credentials" (include "cronorch.fullname" .) }}
{{- end }}

{{- define "cronorch.secretName" -}}
{{- default (include "cronorch.chartSecretName" .) .Values.databaseSecret.existingSecret }}
{{- end }}

{{- define "cronorch.kafkaSecretName" -}}
{{- default (include "cronorch.chartSecretName" .) .Values.kafkaSaslSecret.existingSecret }}
{{- end }}

{{/* The Kafka and PostgreSQL TLS Secrets, mounted read-only in every container when named. */}}
{{- define "cronorch.tlsMounts" -}}
{{- if .Values.kafkaTlsSecret.name }}
- name: kafka-tls
  mountPath: {{ .Values.kafkaTlsSecret.mountPath }}
  readOnly: true
{{- end }}
{{- if .Values.databaseTlsSecret.name }}
- name: pg-tls
  mountPath: {{ .Values.databaseTlsSecret.mountPath }}
  readOnly: true
{{- end }}
{{- end }}

{{- define "cronorch.tlsVolumes" -}}
{{- if .Values.kafkaTlsSecret.name }}
- name: kafka-tls
  secret:
    secretName: {{ .Values.kafkaTlsSecret.name }}
{{- end }}
{{- if .Values.databaseTlsSecret.name }}
- name: pg-tls
  secret:
    secretName: {{ .Values.databaseTlsSecret.name }}
{{- end }}
{{- end }}

{{- define "cronorch.metricsEnabled" -}}
{{- if gt (int64 .Values.config.metrics_port) 0 }}true{{ end }}
{{- end }}

{{/*
The environment of every container: one variable per Settings field, named as settings.ENV
names it, and TOPIC_<FIELD> per Topics field. Numbers go through int64 so that large values
are not printed in float notation.
*/}}
{{- define "cronorch.env" -}}
{{- $c := .Values.config -}}
- name: KAFKA_BOOTSTRAP_SERVERS
  value: {{ $c.kafka_bootstrap_servers | quote }}
- name: KAFKA_SECURITY_PROTOCOL
  value: {{ $c.kafka_security_protocol | quote }}
- name: KAFKA_SASL_MECHANISM
  value: {{ $c.kafka_sasl_mechanism | quote }}
- name: KAFKA_SASL_USERNAME
  value: {{ $c.kafka_sasl_username | quote }}
- name: KAFKA_SASL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "cronorch.kafkaSecretName" . }}
      key: {{ .Values.kafkaSaslSecret.key }}
      optional: true
- name: KAFKA_SSL_CAFILE
  value: {{ $c.kafka_ssl_cafile | quote }}
- name: KAFKA_SSL_CERTFILE
  value: {{ $c.kafka_ssl_certfile | quote }}
- name: KAFKA_SSL_KEYFILE
  value: {{ $c.kafka_ssl_keyfile | quote }}
- name: DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "cronorch.secretName" . }}
      key: {{ .Values.databaseSecret.key }}
- name: PG_STATEMENT_TIMEOUT_MS
  value: {{ int64 $c.pg_statement_timeout_ms | quote }}
- name: PG_IDLE_IN_TRANSACTION_TIMEOUT_MS
  value: {{ int64 $c.pg_idle_in_transaction_timeout_ms | quote }}
- name: PG_COMMAND_TIMEOUT_S
  value: {{ int64 $c.pg_command_timeout_s | quote }}
- name: JOB_DB_POOL_SIZE
  value: {{ int64 $c.job_db_pool_size | quote }}
- name: CRONORCH_APP_ID
  value: {{ $c.app_id | quote }}
- name: TASK_EVENTS_PARTITIONS
  value: {{ int64 $c.task_events_partitions | quote }}
- name: TIMELINE_PARTITIONS
  value: {{ int64 $c.timeline_partitions | quote }}
- name: REPLICATION_FACTOR
  value: {{ int64 $c.replication_factor | quote }}
- name: MIN_INSYNC_REPLICAS
  value: {{ int64 $c.min_insync_replicas | quote }}
- name: TICK_INTERVAL_S
  value: {{ $c.tick_interval_s | quote }}
- name: TICK_CATCHUP_MAX_S
  value: {{ int64 $c.tick_catchup_max_s | quote }}
- name: COMMIT_INTERVAL_MS
  value: {{ int64 $c.commit_interval_ms | quote }}
- name: TRANSACTION_TIMEOUT_MS
  value: {{ int64 $c.transaction_timeout_ms | quote }}
- name: SESSION_TIMEOUT_MS
  value: {{ int64 $c.session_timeout_ms | quote }}
- name: REMINDER_CATCHUP_S
  value: {{ int64 $c.reminder_catchup_s | quote }}
- name: DIGEST_CATCHUP_S
  value: {{ int64 $c.digest_catchup_s | quote }}
- name: SPAWN_CATCHUP_S
  value: {{ int64 $c.spawn_catchup_s | quote }}
- name: STATE_RETENTION_S
  value: {{ int64 $c.state_retention_s | quote }}
- name: MAX_MESSAGE_BYTES
  value: {{ int64 $c.max_message_bytes | quote }}
- name: TICK_MAX_AHEAD_S
  value: {{ int64 $c.tick_max_ahead_s | quote }}
- name: METRICS_PORT
  value: {{ int64 $c.metrics_port | quote }}
- name: LOG_LEVEL
  value: {{ $c.log_level | quote }}
{{- range $field, $topic := $c.topics }}
- name: TOPIC_{{ upper $field }}
  value: {{ $topic | quote }}
{{- end }}
{{- end }}

{{/*
A Deployment of one component. Arguments: dict with
  root      the chart's top-level context
  component worker | tick | job-runner | spawn-sink | relay (the app.kubernetes.io/component label)
  spec      the component's values (replicas, resources, ...)
  args      the arguments after the `cronorch` entrypoint
  registry  true to mount the job registry ConfigMap at /etc/cronorch
*/}}
{{- define "cronorch.deployment" -}}
{{- $root := .root -}}
{{- $spec := .spec -}}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "cronorch.fullname" $root }}-{{ .component }}
  labels:
    {{- include "cronorch.labels" $root | nindent 4 }}
    app.kubernetes.io/component: {{ .component }}
spec:
  replicas: {{ int64 $spec.replicas }}
  selector:
    matchLabels:
      {{- include "cronorch.selectorLabels" $root | nindent 6 }}
      app.kubernetes.io/component: {{ .component }}
  template:
    metadata:
      labels:
        {{- include "cronorch.labels" $root | nindent 8 }}
        app.kubernetes.io/component: {{ .component }}
        cronorch/metrics: "true"
      annotations:
        {{- /* no checksum of the database URL here: pod annotations are widely readable */}}
        {{- if .registry }}
        checksum/jobs-registry: {{ include (print $root.Template.BasePath "/configmap-jobs.yaml") $root | sha256sum }}
        {{- end }}
        {{- with $spec.podAnnotations }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
    spec:
      {{- with $root.Values.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      automountServiceAccountToken: false
      terminationGracePeriodSeconds: {{ int64 $spec.terminationGracePeriodSeconds }}
      securityContext:
        {{- toYaml $root.Values.podSecurityContext | nindent 8 }}
      containers:
        - name: {{ .component }}
          image: {{ include "cronorch.image" $root | quote }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          args:
            {{- toYaml .args | nindent 12 }}
          env:
            {{- include "cronorch.env" $root | nindent 12 }}
          {{- if include "cronorch.metricsEnabled" $root }}
          ports:
            - name: metrics
              containerPort: {{ int64 $root.Values.config.metrics_port }}
              protocol: TCP
          livenessProbe:
            httpGet: {path: /healthz, port: metrics}
            {{- toYaml $root.Values.probes.liveness | nindent 12 }}
          readinessProbe:
            httpGet: {path: /readyz, port: metrics}
            {{- toYaml $root.Values.probes.readiness | nindent 12 }}
          {{- end }}
          resources:
            {{- toYaml $spec.resources | nindent 12 }}
          securityContext:
            {{- toYaml $root.Values.securityContext | nindent 12 }}
          volumeMounts:
            - name: tmp
              mountPath: /tmp
            {{- if .registry }}
            - name: registry
              mountPath: /etc/cronorch
              readOnly: true
            {{- end }}
            {{- include "cronorch.tlsMounts" $root | nindent 12 }}
      volumes:
        - name: tmp
          emptyDir: {}
        {{- if .registry }}
        - name: registry
          configMap:
            name: {{ include "cronorch.fullname" $root }}-jobs
        {{- end }}
        {{- include "cronorch.tlsVolumes" $root | nindent 8 }}
      {{- with $spec.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $spec.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $spec.affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
{{- end }}
