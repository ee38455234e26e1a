"""The release of a run: the Hub-ready folder `<run>/release/` and its upload (`compactlm.release.upload`)."""
