"""Media layer: stitch clips and shots (numpy), encode mp4/gif/apng/webp and probe files
(PyAV). Import the modules themselves (`moldbatch.media.encode`, ...): this package imports
neither numpy nor PyAV."""
