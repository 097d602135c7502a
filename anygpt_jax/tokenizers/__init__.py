"""Offline PyTorch tokenizers and de-tokenizers for images, speech and music, and the batch job.

Nothing here imports JAX or TensorFlow (TensorFlow imports JAX whenever it is installed), so
the job runs on GPU machines without a TPU stack. Modules:

  speech       SpeechTokenizer worker (RVQ-1, 50 Hz) and the SoundStorm-based de-tokenizer
  soundstorm   our SoundStorm (AnyGPT checkpoint key names) with confidence-based decoding
  music        Encodec 32 kHz worker, frame-wise flattening and its inverse
  image        SEED-2 worker, SEED preprocessing, SD-2.1 unCLIP de-tokenizer
  seed_model   the SEED-2 quantizer modules (EVA ViT-g, causal Q-Former, VQ, unCLIP MLP)
  audio_io     reading, checking and resampling audio (one libsndfile layer: wav, flac, ogg, opus, mp3)
  media        where a medium is: a file, a plain tar's member (by offset), an audio span; media lookup
  inputs       the job's record type; manifest / folder / AnyGPT-data readers
  readers      corpora as distributed: webdataset tars, MMC4, AnyInstruct, MLS, Common Voice, GigaSpeech
  anygpt_data  AnyGPT's token-string records -> shard samples
  job          shard plans, windows, prefetch, batching, shards, stats, rejects, resumability (local engine)
  ray_engine   the same job on Ray Data
  tfrecord     TFRecord framing without TensorFlow

Tiny random checkpoints in these layouts and the demo corpus are in `anygpt_jax.testing`.
"""
