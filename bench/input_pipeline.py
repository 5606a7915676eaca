"""Input-pipeline throughput against what the train step consumes; the last line is one JSON object.

  python bench/input_pipeline.py --gin_file=gin/models/t5_1_1/small.gin \
      --task=wiki_span_corruption --batch_size=8 --inputs_length=512 --targets_length=114

Reads the real pipeline (`t5x_lite.data.pipeline.get_dataset`: seqio task, span corruption,
packing, batching, shuffle) on this host's CPU and times `--batches` batches after the first (which
fills the shuffle buffer and is reported on its own). The train step's rate comes from the same run:
`bench/train_step.py`'s timing of the gin's model at the same batch and lengths, unless `--step_s`
gives one. Examples are the task's examples (one per packed segment); rows are packed sequences.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import numpy as np

import train_step  # a sibling: bench/ is the script's directory
from t5x_lite import gin_utils, vocab  # noqa: E402
from t5x_lite.data import pipeline  # noqa: E402


def examples_in(batch) -> int:
  """Packed examples in a batch: distinct non-zero segment ids per row, summed."""
  seg = batch.get('encoder_segment_ids', batch.get('decoder_segment_ids'))
  if seg is None:  # unpacked: one example per row with any target
    return int(np.sum(np.any(batch['decoder_target_tokens'] != 0, axis=1)))
  return int(sum(len(np.unique(row[row > 0])) for row in seg))


def main(argv=None) -> int:
  def run(rest):
    p = argparse.ArgumentParser(prog='bench/input_pipeline.py')
    p.add_argument('--task', default='wiki_span_corruption')
    p.add_argument('--batch_size', type=int, default=8)
    p.add_argument('--inputs_length', type=int, default=512)
    p.add_argument('--targets_length', type=int, default=114)
    p.add_argument('--batches', type=int, default=1000,
                   help='timed batches after the first (enough that prefetch buffers do not hide the rate)')
    p.add_argument('--step_s', type=float, default=None,
                   help='train step seconds to compare with (default: time it here)')
    p.add_argument('--train_steps', type=int, default=2, help='timed train steps (median)')
    args = p.parse_args(rest)
    from t5x_lite import tasks  # pylint: disable=import-outside-toplevel
    tasks.register_all(vocab.get_vocabulary())
    config = gin_utils.query_macro('MODEL_CONFIG')
    lengths = {'inputs': args.inputs_length, 'targets': args.targets_length}

    t = time.perf_counter()
    batches = pipeline.get_dataset(args.task, lengths, args.batch_size, seed=0,
                                   feature_converter=pipeline.feature_converter(config))
    first = next(batches)
    first_s = time.perf_counter() - t
    times, examples, tokens = [], 0, 0
    for _ in range(args.batches):
      t = time.perf_counter()
      batch = next(batches)
      times.append(time.perf_counter() - t)
      examples += examples_in(batch)
      tokens += int(np.sum(batch['encoder_input_tokens'] != 0)
                    + np.sum(batch['decoder_target_tokens'] != 0))
    seconds = sum(times)
    rows_per_s = args.batches * args.batch_size / seconds
    result = {
        'task': args.task, 'batch_size': args.batch_size,
        'lengths': [args.inputs_length, args.targets_length],
        'first_batch_s': first_s,
        'batch_s_median': statistics.median(times),
        'rows_per_s': rows_per_s,
        'examples_per_s': examples / seconds,
        'examples_per_row': examples / (args.batches * args.batch_size),
        'nonpad_tokens_per_s': tokens / seconds,
        'fill': tokens / (args.batches * args.batch_size * sum(lengths.values())),
    }
    print(f'pipeline: {rows_per_s:,.1f} packed rows/s, {result["examples_per_s"]:,.1f} examples/s '
          f'({result["examples_per_row"]:.2f} per row, {result["fill"]:.1%} of positions real), '
          f'first batch {first_s:.1f} s', flush=True)
    del first

    step_s = args.step_s
    if step_s is None:
      batch = train_step.synthetic_batch(np.random.default_rng(0), args.batch_size,
                                         args.inputs_length, args.targets_length,
                                         config.vocab_size)
      ours = train_step.time_ours(config, batch, 'adafactor', args.train_steps, 1, None)
      step_s = statistics.median(ours['times'])
    consumed = args.batch_size / step_s
    result.update({'train_step_s': step_s, 'train_rows_per_s': consumed,
                   'ratio': rows_per_s / consumed})
    print(f'train step: {step_s:.3f} s for {args.batch_size} rows = {consumed:.2f} rows/s; '
          f'the pipeline is {rows_per_s / consumed:,.0f}x that', flush=True)
    print(json.dumps(result))
  return gin_utils.run_main(run, argv)


if __name__ == '__main__':
  sys.exit(main())
