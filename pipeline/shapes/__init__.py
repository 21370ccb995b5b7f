"""The shapes model: a tiny text-to-image latent diffusion model the project trains itself.

No weights can be downloaded where synth is built and tested, so the demo, the quick starts
and the semantic tests use this model. It has Stable Diffusion's structure (an AutoencoderKL,
a CLIP text encoder, a cross-attention UNet, classifier-free guidance) at 32x32 pixels, and
draws one coloured shape on a plain background:

  dataset.py    the procedural images and captions it learns from (and the held-out pairs)
  judge.py      reads colour, shape and background back from an image
  tokenizer.py  a word-level CLIP tokenizer for the captions' vocabulary
  train.py      `synth train-tiny`: the VAE, then the UNet with its text encoder
  evaluate.py   `synth eval-tiny`: semantic checks through the real Ray pipeline
  model/        the trained weights, committed (loaded as `model: synth:shapes`)
"""
