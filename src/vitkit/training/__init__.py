"""Training: the paper's pre-training and fine-tuning recipes applied to a finished model
(optimiser, schedules, AMP, compile, DDP/FSDP2, checkpoints). Nothing here yet: it arrives with
the training issue; `models/` stays free of training code."""
