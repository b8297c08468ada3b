// The shapes of the API's JSON answers, as the console reads them.

/** Lifecycle states of a run. */
export type RunStatus = 'queued' | 'running' | 'succeeded' | 'failed' | 'cancelled';

/** Where a run stands. */
export interface Progress {
  step: number;
  total_steps: number;
  phase: string | null;
  fraction: number;
  images_per_sec: number | null;
  eta_secs: number | null;
}

/** A training run. */
export interface Run {
  id: string;
  experiment_id: string | null;
  name: string;
  algorithm: string;
  status: RunStatus;
  priority: number;
  attempt: number;
  max_attempts: number;
  spec: Record<string, unknown>;
  progress: Progress;
  queue_position: number | null;
  best_metrics: Record<string, number> | null;
  final_metrics: Record<string, number> | null;
  failure_reason: string | null;
  worker_id: string | null;
  cancel_requested: boolean;
  created_at: string;
  started_at: string | null;
  finished_at: string | null;
}

/** One page of the runs list. */
export interface RunPage {
  items: Run[];
  next_cursor: string | null;
}

/** A downsampled metric series: `[step, value]` pairs. */
export interface MetricSeries {
  name: string;
  points: [number, number][];
  total_points: number;
}

/** One attempt at a run. */
export interface Attempt {
  run_id?: string;
  attempt: number;
  worker_id: string | null;
  started_at: string;
  ended_at: string | null;
  exit_reason: string | null;
  exit_code: number | null;
  first_step?: number;
  last_step?: number;
}

/** One line a trainer wrote on stderr. */
export interface LogLine {
  id: number;
  attempt: number;
  line: string;
  created_at: string;
}

/** One stored file of a checkpoint. */
export interface CheckpointFile {
  name: string;
  size_bytes: number;
  sha256: string;
}

/** A checkpoint of a run. */
export interface Checkpoint {
  id: string;
  run_id: string;
  attempt: number;
  step: number;
  kind: 'latest' | 'best' | 'final';
  files: CheckpointFile[];
  size_bytes: number;
  metrics: Record<string, number>;
  created_at: string;
}

/** A named group of runs. */
export interface Experiment {
  id: string;
  name: string;
  description: string;
  tags: string[];
  created_at: string;
}

/** Dataset statistics written at ingestion; field names vary little, so read loosely. */
export type DatasetStats = Record<string, unknown>;

/** An uploaded dataset. */
export interface Dataset {
  id: string;
  name: string;
  kind: 'labeled' | 'unlabeled';
  format: string;
  status: 'created' | 'uploaded' | 'ingesting' | 'ready' | 'failed';
  failure_reason: string | null;
  parts: { part: string; size_bytes: number; sha256: string }[];
  stats: DatasetStats | null;
  created_at: string;
  updated_at?: string;
}

/** A sample image reference. */
export interface Sample {
  index: number;
  label: number | null;
}

/** A scheduler process. */
export interface Worker {
  id: string;
  hostname: string;
  slots: number;
  devices: unknown;
  started_at: string;
  last_heartbeat_at: string;
  stopped_at: string | null;
  alive: boolean;
  running_runs: string[];
}

/** A queued run in claim order. */
export type QueueEntry = Run;
