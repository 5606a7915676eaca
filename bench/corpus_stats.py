"""What the offline English corpus (t5x_lite/data/english_corpus.py) holds, per source: text before
and after line de-duplication, documents, the validation share, and how much of it is new text
(distinct word 5-grams over all 5-grams, sampled 1 in 8 by hash):

  python bench/corpus_stats.py [--out=bench/results/offline_english.md]

Reads the installed packages directly (no TFDS preparation); about a minute and a half here.
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import time
import zlib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
from t5x_lite.data import english_corpus  # pylint: disable=wrong-import-position

LICENCES = {'wiki_sample': 'CC BY-SA 3.0', 'wiki_openings': 'CC BY-SA 4.0',
            'gcide': 'GPL-3.0-or-later'}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser()
  parser.add_argument('--out', default=os.path.join(REPO, 'bench', 'results',
                                                    'offline_english.md'))
  args = parser.parse_args(argv)
  start = time.time()
  raw, kept, docs, val = (collections.Counter() for _ in range(4))
  grams, distinct = collections.Counter(), collections.defaultdict(set)
  seen_all: set[int] = set()

  def source(doc_id: str) -> str:
    return doc_id.split('/')[0]

  def counted():
    for doc_id, text in english_corpus.iter_sources():
      raw[source(doc_id)] += len(text.encode())
      yield doc_id, text

  for i, (doc_id, text) in enumerate(english_corpus.iter_documents(counted())):
    s = source(doc_id)
    kept[s] += len(text.encode())
    docs[s] += 1
    if english_corpus.split_of(doc_id) == 'validation':
      val[s] += len(text.encode())
    words = text.lower().split()
    for j in range(len(words) - 4):
      h = zlib.crc32(' '.join(words[j:j + 5]).encode())
      if h % 8 == 0:
        grams[s] += 1
        if h not in seen_all:  # new to the corpus so far (sources in reading order)
          seen_all.add(h)
          distinct[s].add(h)
    if i % 20000 == 0:
      print(f'{i:,} documents, {sum(kept.values()) / 1e6:.1f} MB kept, '
            f'{time.time() - start:.0f} s', flush=True)
  rows = ['| source | licence | raw MB | kept MB | documents | validation MB | new 5-grams |',
          '|---|---|---|---|---|---|---|']
  for s in raw:
    new = len(distinct[s]) / grams[s] if grams[s] else 0.0
    rows.append(f"| {s} | {LICENCES.get(s, 'public domain')} | {raw[s] / 1e6:.2f} | "
                f'{kept[s] / 1e6:.2f} | {docs[s]:,} | {val[s] / 1e6:.2f} | {new:.0%} |')
  total_new = len(seen_all) / max(sum(grams.values()), 1)
  rows.append(f'| **all** | | {sum(raw.values()) / 1e6:.2f} | **{sum(kept.values()) / 1e6:.2f}** '
              f'| {sum(docs.values()):,} | {sum(val.values()) / 1e6:.2f} | {total_new:.0%} |')
  text = '\n'.join([
      '# The offline English corpus (`offline_english`)', '',
      '`python bench/corpus_stats.py`: text per source before and after dropping lines seen '
      'earlier in the corpus (sources read in this order), documents, the validation split (2% of '
      'documents by a hash of their id), and the share of word 5-grams not seen earlier (1-in-8 '
      'hash sample). MB = 10^6 bytes of UTF-8.', '', *rows, '',
      f'{time.time() - start:.0f} s on this machine.', ''])
  print(text)
  with open(args.out, 'w') as f:
    f.write(text)
  return 0


if __name__ == '__main__':
  sys.exit(main())
