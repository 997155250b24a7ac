"""Video files, cameras and streams (PyAV / FFmpeg, the `video` extra): decode, sample, scale, and the real-time
pipeline behind `clip-rt watch`.

    from clip_rt.video.embed import embed_video, classify_video, segments_of   # files: frames with timestamps
    from clip_rt.video.live import LivePipeline                               # cameras and streams, real time

Modules, one concern each: source (open files / V4L2 / RTSP / HTTP, decode, reconnect), sample (by presentation
time), frames (frame -> model input, FFmpeg's scaler or Pillow, rotation), live (the bounded real-time pipeline),
events (threshold events with hysteresis, segments), embed (files -> embeddings and labels with times).
Importing this package does not import av; opening a source does, with an install hint when it is missing.
"""
