"""Files in and out: HF model directories (safetensors, sharded, config), keras-hub presets, preset
names, the atomic writer.

files.py        the one atomic writer (temp file + fsync + rename), directory fsync, JSON reads
safetensors.py  the safetensors container by hand: header checks, memory mapping, F32/F16/BF16
checkpoint.py   an HF model directory: which files, BLOOM's tensor names, load_params / saving
                only the files a model owns, all at once
keras.py        keras-hub presets: config.json, model.weights.h5 (h5py) <-> HF names; writing them
presets.py      preset names (keras-hub's), hf:// and kaggle:// -> model directories on disk
"""
