"""Training runs: corpora, the training loop and its checkpoints, evaluation, the BPE trainer.

data.py        corpus files -> documents (one reader) -> a token cache -> packed windows
train.py       Trainer (fit / evaluate loops, resumable atomic checkpoints), the `train` command
evaluation.py  held-out loss, perplexity and bits per byte of a text file
bpe_train.py   train_tokenizer(): BPE merges over BLOOM's pre-token pieces
"""
