// Run spec presets for the new-run form. The paper's CIFAR-10-4K values are the defaults the
// API applies to any field left out; they are shown as placeholders and make up the
// "CIFAR-10-4K recipe" preset. Ready-made specs in the repository's `examples/` folder are
// bundled at build time when present, and take precedence over the built-in copies below.

/** The paper's CIFAR-10-4K settings: the run spec's defaults, field by field. */
export const PAPER_DEFAULTS = {
  algorithm: 'mpl',
  model: {
    arch: 'wide_resnet',
    depth: 28,
    widen_factor: 2,
    dropout: 0.2,
    bn_momentum: null,
    leaky_relu_slope: 0.1,
  },
  data: {
    labeled: {},
    unlabeled: null,
    eval: null,
    num_labeled: 4000,
    num_validation: 0,
    normalization: null,
  },
  batch_size: 128,
  mu: 7,
  total_steps: 300000,
  teacher_optimizer: {
    lr: 0.05,
    momentum: 0.9,
    nesterov: true,
    weight_decay: 5e-4,
    warmup_steps: 5000,
  },
  student_optimizer: {
    lr: 0.05,
    momentum: 0.9,
    nesterov: true,
    weight_decay: 5e-4,
    warmup_steps: 5000,
  },
  student_wait_steps: 3000,
  grad_clip: null,
  label_smoothing: 0.15,
  mpl: {
    feedback: 'gradient',
    h_baseline: false,
    baseline_decay: 0.99,
    pseudo_label_view: 'strong',
  },
  uda: { weight: 8.0, temperature: 0.7, threshold: 0.6, ramp_steps: 5000 },
  augment: {
    flip: true,
    pad_crop_fraction: 0.125,
    randaugment_ops: 2,
    randaugment_magnitude: 16.0,
    randaugment_sampling: 'fixed',
    cutout_fraction: 0.5,
  },
  ema_decay: 0.995,
  finetune: {
    enabled: true,
    steps: 1000,
    batch_size: 512,
    lr: 3e-5,
    momentum: 0.9,
    weight_decay: 0,
  },
  eval: { interval_steps: 1000, batch_size: 512, bn_recalibration_batches: 0 },
  checkpoint: { interval_steps: 1000, keep_latest: 2 },
  seed: 0,
  device: { device: 'auto', threads: null, bf16: false },
} as const;

/** A tiny run on Fashion-MNIST that finishes in about a minute on a CPU. */
const BUILTIN_SMOKE = {
  algorithm: 'mpl',
  model: { arch: 'wide_resnet', depth: 10, widen_factor: 1, dropout: 0 },
  data: {
    labeled: { path: 'fashion-mnist', format: 'idx' },
    eval: { path: 'fashion-mnist', format: 'idx' },
    num_labeled: 100,
  },
  batch_size: 8,
  mu: 2,
  total_steps: 40,
  student_wait_steps: 0,
  teacher_optimizer: { warmup_steps: 5 },
  student_optimizer: { warmup_steps: 5 },
  uda: { ramp_steps: 10 },
  finetune: { enabled: true, steps: 5, batch_size: 32 },
  eval: { interval_steps: 20, batch_size: 256 },
  checkpoint: { interval_steps: 10, keep_latest: 2 },
  device: { device: 'cpu', threads: 1 },
};

const CIFAR10_4K = {
  ...structuredClone(PAPER_DEFAULTS),
  data: {
    labeled: { path: 'cifar-10', format: 'cifar10' },
    eval: { path: 'cifar-10-test', format: 'cifar10' },
    num_labeled: 4000,
    num_validation: 0,
    normalization: null,
  },
} as Record<string, unknown>;

const examples = import.meta.glob('../../examples/*.json', { eager: true, import: 'default' });

function example(pattern: RegExp): Record<string, unknown> | null {
  const entry = Object.entries(examples).find(([path]) => pattern.test(path));
  return entry ? (structuredClone(entry[1]) as Record<string, unknown>) : null;
}

/** A named preset. */
export interface Preset {
  id: string;
  label: string;
  spec: Record<string, unknown>;
}

/** The presets offered by the form. */
export function presets(): Preset[] {
  return [
    {
      id: 'smoke',
      label: 'Smoke (Fashion-MNIST, about 40 steps)',
      spec: example(/\/smoke\.json$/) ?? structuredClone(BUILTIN_SMOKE),
    },
    {
      id: 'cifar10-4k',
      label: 'CIFAR-10-4K recipe (the paper)',
      spec: example(/cifar.*10.*4k.*\.json$/i) ?? structuredClone(CIFAR10_4K),
    },
    {
      id: 'empty',
      label: 'Paper defaults (only the data to fill in)',
      spec: { data: { labeled: {} } },
    },
  ];
}

/**
 * Points every data source of a preset (`labeled`, `unlabeled`, `eval`) at platform datasets:
 * local paths are replaced by the chosen dataset ids.
 */
export function withDatasets(
  spec: Record<string, unknown>,
  choice: { labeled: string; eval: string; unlabeled: string },
): Record<string, unknown> {
  const copy = structuredClone(spec);
  const data = (copy.data ?? {}) as Record<string, unknown>;
  for (const role of ['labeled', 'unlabeled', 'eval'] as const) {
    const id = choice[role];
    if (id) data[role] = { dataset_id: id };
    else if (role === 'labeled') data[role] = {};
    else delete data[role];
  }
  copy.data = data;
  return copy;
}
