"""Text sources, tokenization and packing into train / validation / calibration splits (`splits`), and the data
stage (`compactlm.data.stage`)."""
