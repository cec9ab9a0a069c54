//! Worker-side image preprocessing: JPEG decode, OpenCV-exact bicubic resize, grey/threshold/opening channels, shard cache.
