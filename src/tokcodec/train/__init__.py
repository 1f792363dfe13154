"""Training commands: `python -m tokcodec.train {tokenizer,ladder,tokens,prior,export}`."""
