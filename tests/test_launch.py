"""launch/: the SLURM script and the TPU commands are correct text, and bad input exits 2."""

import os
import shlex
import subprocess
import sys
import tarfile

import pytest

from t5x_lite.launch import slurm, tpu

# A flag with spaces, single and double quotes: must reach the trainer as one argv entry.
TRICKY = """--gin.MODEL_DIR='/ckpt/my run' --gin.NOTE="it's \\"big\\"\""""
FLAGS = ['--gin_file=gin/runs/pretrain_base.gin', TRICKY]


def _script(**kw):
  args = dict(nodes=4, gpus_per_node=8, job_name='t5-base', time='24:00:00', train_flags=FLAGS)
  args.update(kw)
  return slurm.sbatch_script(**args)


def _write_exe(path, body):
  path.write_text('#!/bin/bash\n' + body)
  path.chmod(0o755)


# --- SLURM -----------------------------------------------------------------------------------

def test_sbatch_header_for_4_nodes_of_8_gpus():
  text = _script(partition='gpu', account='lm')
  for line in ['#SBATCH --nodes=4', '#SBATCH --ntasks-per-node=8', '#SBATCH --gpus-per-node=8',
               '#SBATCH --cpus-per-task=8', '#SBATCH --time=24:00:00',
               '#SBATCH --job-name=t5-base', '#SBATCH --output=logs/%x-%j.out',
               '#SBATCH --partition=gpu', '#SBATCH --account=lm']:
    assert line in text.splitlines()
  assert text.startswith('#!/bin/bash\n')
  assert 'export NCCL_DEBUG=WARN' in text
  assert 'export XLA_PYTHON_CLIENT_MEM_FRACTION=0.9' in text
  assert '--xla_gpu_enable_latency_hiding_scheduler=true' in text
  assert 'scontrol show hostnames' in text and 'sed -n 1p' in text  # no SIGPIPE under pipefail


def test_tasks_run_the_repo_venv_by_default():
  assert "exec .venv/bin/python -m t5x_lite.train" in _script()


def test_process_per_node_runs_one_task_that_sees_all_gpus():
  text = _script(process_per='node')
  assert '#SBATCH --ntasks-per-node=1' in text.splitlines()
  assert '#SBATCH --cpus-per-task=64' in text.splitlines()
  assert 'CUDA_VISIBLE_DEVICES' not in text


def test_sbatch_script_is_valid_bash(tmp_path):
  path = tmp_path / 'job.sbatch'
  path.write_text(_script())
  subprocess.run(['bash', '-n', str(path)], check=True)


def test_script_exports_the_contract_and_passes_flags_verbatim(tmp_path):
  """Runs the script with stub scontrol/srun/python: each task gets the env and the exact argv."""
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir()
  # A long node list: reading only its first line must not kill the writer (SIGPIPE, exit 141).
  _write_exe(bin_dir / 'scontrol', 'printf "gpu-node-07\\ngpu-node-08\\n"; seq -f "node-%g" 200000\n')
  # srun: drop its own options, run the task as rank 11 (local rank 3) of 32.
  _write_exe(bin_dir / 'srun', 'while [[ "$1" == --* ]]; do shift; done\n'
                                'SLURM_PROCID=11 SLURM_LOCALID=3 SLURM_NTASKS=32 exec "$@"\n')
  _write_exe(bin_dir / 'python',
             'echo "ADDR=$T5X_LITE_COORDINATOR_ADDRESS"; echo "N=$T5X_LITE_NUM_PROCESSES"\n'
             'echo "ID=$T5X_LITE_PROCESS_ID"; echo "CVD=$CUDA_VISIBLE_DEVICES"\n'
             'printf "ARG=%s\\n" "$@"\n')
  path = tmp_path / 'job.sbatch'
  path.write_text(_script(coordinator_port=1234, python='python'))
  env = dict(os.environ, PATH=f'{bin_dir}:{os.environ["PATH"]}',
             SLURM_JOB_NODELIST='gpu-node-[07-08]')
  env.pop('XLA_FLAGS', None)
  out = subprocess.run(['bash', str(path)], env=env, capture_output=True, text=True, check=True)
  lines = out.stdout.splitlines()
  assert lines[:4] == ['ADDR=gpu-node-07:1234', 'N=32', 'ID=11', 'CVD=3']
  assert lines[4:] == ['ARG=-m', 'ARG=t5x_lite.train'] + [f'ARG={f}' for f in FLAGS]


def test_dry_run_prints_the_script(capsys):
  rc = slurm.main(['--nodes=4', '--gpus_per_node=8', '--job_name=t5-base', '--time=24:00:00',
                   '--dry_run', '--'] + FLAGS)
  assert rc == 0
  assert capsys.readouterr().out == _script()


def test_submit_without_sbatch_says_so(tmp_path, monkeypatch, capsys):
  monkeypatch.setenv('PATH', str(tmp_path))  # nothing on PATH, so no sbatch
  out = tmp_path / 'job.sbatch'
  rc = slurm.main(['--nodes=1', '--gpus_per_node=1', '--job_name=j', '--time=00:10:00',
                   f'--out={out}', '--submit'])
  assert rc == 1
  err = capsys.readouterr().err
  assert 'sbatch not found on PATH' in err and str(out) in err
  assert out.read_text().startswith('#!/bin/bash')


@pytest.mark.parametrize('bad', [['--nodes=0'], ['--nodes=2', '--process_per=rack'],
                                 ['--nodes=2', '--time=tomorrow'], ['--nodes=two']])
def test_slurm_bad_input_exits_2(bad, capsys):
  base = {'--gpus_per_node': '8', '--job_name': 'j', '--time': '01:00:00'}
  argv = [f'{k}={v}' for k, v in base.items() if not any(b.startswith(k) for b in bad)] + bad
  assert slurm.main(argv + ['--dry_run']) == 2
  captured = capsys.readouterr()
  assert captured.out == '' and 'error' in captured.err


# --- TPU -------------------------------------------------------------------------------------

@pytest.mark.parametrize('accelerator_type,chips,hosts,version', [
    ('v4-8', 4, 1, 'tpu-ubuntu2204-base'),
    ('v4-32', 16, 4, 'tpu-ubuntu2204-base'),
    ('v5p-8', 4, 1, 'v2-alpha-tpuv5'),
    ('v5p-64', 32, 8, 'v2-alpha-tpuv5'),
    ('v5litepod-8', 8, 1, 'v2-alpha-tpuv5-lite'),
    ('v5litepod-16', 16, 4, 'v2-alpha-tpuv5-lite'),
    ('v5litepod-256', 256, 64, 'v2-alpha-tpuv5-lite'),
])
def test_slice_table(accelerator_type, chips, hosts, version):
  s = tpu.parse_accelerator_type(accelerator_type)
  assert (s.chips, s.hosts, s.runtime_version) == (chips, hosts, version)


def _tpu(**kw):
  args = dict(tpu_name='t5-base', accelerator_type='v5p-64', zone='us-east5-a', project='proj',
              train_flags=FLAGS, repo_url='https://example.com/t5x_lite.git')
  args.update(kw)
  return tpu.tpu_commands(**args)


def test_v5p_64_commands_in_order():
  create, install, run, delete = _tpu()
  where = '--zone=us-east5-a --project=proj'
  assert create == ('gcloud compute tpus tpu-vm create t5-base ' + where +
                    ' --accelerator-type=v5p-64 --version=v2-alpha-tpuv5')
  assert install.startswith(f'gcloud compute tpus tpu-vm ssh t5-base {where} --worker=all ')
  assert delete == f'gcloud compute tpus tpu-vm delete t5-base {where} --quiet'
  # The --command value is one shell word; inside it the trainer flags are quoted again.
  inner = shlex.split(install)[-1]
  assert inner.startswith('--command=')
  assert 'git clone https://example.com/t5x_lite.git t5x_lite' in inner
  assert inner.endswith('cd t5x_lite && make install EXTRAS=tpu')  # jax with libtpu
  remote = shlex.split(shlex.split(run)[-1][len('--command='):])
  assert remote == ['cd', 't5x_lite', '&&', '.venv/bin/python', '-m', 't5x_lite.train',
                    '--distributed=auto'] + FLAGS


def test_single_host_slice_runs_without_distributed_start():
  run = _tpu(accelerator_type='v5p-8')[2]
  assert '--distributed' not in run


def test_without_repo_url_only_the_tracked_files_are_shipped(tmp_path):
  """The pack command, run for real on a git checkout that holds a .venv and untracked files,
  archives exactly `git ls-files` (working-tree contents); the archive is what is copied."""
  repo = tmp_path / 'checkout'
  (repo / 'pkg').mkdir(parents=True)
  (repo / 'pkg' / 'a.py').write_text('old\n')
  (repo / '.gitignore').write_text('.venv/\n')
  git = ['git', '-C', str(repo), '-c', 'user.name=t', '-c', 'user.email=t@t']
  subprocess.run([*git, 'init', '-q'], check=True)
  subprocess.run([*git, 'add', '.'], check=True)
  subprocess.run([*git, 'commit', '-qm', 'x'], check=True)
  (repo / 'pkg' / 'a.py').write_text('edited\n')       # an uncommitted edit travels
  (repo / '.venv' / 'lib').mkdir(parents=True)        # ignored: stays home
  (repo / '.venv' / 'lib' / 'big.so').write_bytes(b'x' * 1000)
  (repo / 'notes.txt').write_text('untracked\n')      # untracked: stays home
  commands = _tpu(repo_url=None, local_repo=str(repo), tpu_name='t5-pack-test')
  assert len(commands) == 6
  pack, copy, install = commands[1:4]
  archive = '/tmp/t5-pack-test-src.tgz'
  assert subprocess.run(shlex.split(pack), check=False).returncode == 0
  try:
    with tarfile.open(archive) as tar:
      assert sorted(tar.getnames()) == ['.gitignore', 'pkg/a.py']
      assert tar.extractfile('pkg/a.py').read() == b'edited\n'
  finally:
    os.remove(archive)
  assert copy.startswith(f'gcloud compute tpus tpu-vm scp {archive} t5-pack-test:t5x_lite-src.tgz ')
  assert '--worker=all' in copy and '--recurse' not in copy
  assert shlex.split(install)[-1] == ('--command=mkdir -p t5x_lite && tar -xzf t5x_lite-src.tgz '
                                      '-C t5x_lite && cd t5x_lite && make install EXTRAS=tpu')


def test_runtime_version_override():
  assert _tpu(runtime_version='v2-alpha-tpuv5-custom')[0].endswith('--version=v2-alpha-tpuv5-custom')


def test_tpu_dry_run_prints_commands(capsys):
  rc = tpu.main(['--tpu_name=t5-base', '--accelerator_type=v5p-64', '--zone=us-east5-a',
                 '--project=proj', '--repo_url=https://example.com/t5x_lite.git', '--dry_run',
                 '--'] + FLAGS)
  assert rc == 0
  captured = capsys.readouterr()
  assert captured.out.splitlines() == _tpu()
  assert '32 chips on 8 host(s)' in captured.err


def test_tpu_run_without_gcloud_says_so(tmp_path, monkeypatch, capsys):
  monkeypatch.setenv('PATH', str(tmp_path))
  rc = tpu.main(['--tpu_name=t', '--accelerator_type=v4-8', '--zone=z', '--project=p'])
  assert rc == 1 and 'gcloud not found on PATH' in capsys.readouterr().err


@pytest.mark.parametrize('accelerator_type', ['v5p-63', 'v5p-4', 'v5litepod-12', 'v9-8', 'v5e-8',
                                              'v5p'])
def test_tpu_unknown_accelerator_type_exits_2(accelerator_type, capsys):
  rc = tpu.main(['--tpu_name=t', f'--accelerator_type={accelerator_type}', '--zone=z',
                 '--project=p', '--dry_run'])
  assert rc == 2
  captured = capsys.readouterr()
  assert captured.out == '' and 'error' in captured.err


def test_tpu_bad_name_exits_2(capsys):
  assert tpu.main(['--tpu_name=Bad Name', '--accelerator_type=v4-8', '--zone=z', '--project=p',
                   '--dry_run']) == 2


def test_scripts_run_as_files():
  """`python launch/slurm.py ...` works from the repo root, as the docstrings show."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  out = subprocess.run([sys.executable, 'launch/tpu.py', '--tpu_name=t', '--accelerator_type=v4-8',
                        '--zone=z', '--project=p', '--dry_run'], cwd=root, capture_output=True,
                       text=True, check=True)
  assert out.stdout.startswith('gcloud compute tpus tpu-vm create t ')
  out = subprocess.run([sys.executable, 'launch/slurm.py', '--nodes=0', '--gpus_per_node=8',
                        '--job_name=j', '--time=01:00:00', '--dry_run'], cwd=root,
                       capture_output=True, text=True)
  assert out.returncode == 2 and out.stderr.count('\n') == 1
