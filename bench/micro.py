"""The micro model that bench/sharding_equivalence.py and the end-to-end tests train: one copy, so
the equivalence figures and the tests describe the same run (the tests find it through pytest's
`pythonpath = bench`, setup.cfg)."""

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
    # T5's schedule (pretrain.gin): flat 0.01, valid for runs of any length, unlike the tiny
    # run's warm-up + cosine over its 600 steps.
    "--gin.learning_rate_schedule.kind='rsqrt'",
    '--gin.learning_rate_schedule.base_learning_rate=1.0',
    '--gin.learning_rate_schedule.warmup_steps=10000',
    # The trainer's own settings last (TRAIN_FLAGS): other entry points take MICRO without them.
    '--gin.train.log_period=1',
    '--gin.train.decode_sample=False',
    '--gin.train.plot_loss=False',
]
TRAIN_FLAGS = 3
