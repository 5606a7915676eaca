"""The micro model that end-to-end tests and bench/sharding_equivalence.py train: one copy, so the
equivalence figures and the tests describe the same run."""

# pretrain_tiny.gin's path (task, optimizer, trainer, checkpoints) with less compute.
MICRO = [
    '--gin_file=gin/runs/pretrain_tiny.gin',
    '--gin.t5x_lite.models.T5Config.d_model=64',
    '--gin.t5x_lite.models.T5Config.num_heads=4',
    '--gin.t5x_lite.models.T5Config.d_kv=16',
    '--gin.t5x_lite.models.T5Config.d_ff=128',
    '--gin.t5x_lite.models.T5Config.num_encoder_layers=1',
    '--gin.t5x_lite.models.T5Config.num_decoder_layers=1',
    "--gin.TASK_FEATURE_LENGTHS={'inputs': 64, 'targets': 16}",
    '--gin.BATCH_SIZE=8',
    '--gin.train.log_period=1',
    '--gin.train.decode_sample=False',
]
