"""Files in and out: HF model directories (safetensors, sharded, config), presets, the atomic writer.

files.py        the one atomic writer (temp file + fsync + rename), directory fsync, JSON reads
safetensors.py  the safetensors container by hand: header checks, memory mapping, F32/F16/BF16
checkpoint.py   an HF model directory: which files, BLOOM's tensor names, load_params / saving
                only the files a model owns, all at once
presets.py      preset names (keras-hub's) -> model directories on disk
"""
