"""Data sets and the input pipeline.

Every source (synthetic, MPII, LSP, FLIC) yields the same per-person feature dict:

  image      uint8   [H, W, 3]  the full original image
  joints     float32 [K, 2]     (x, y) in 0-based pixels of `image` (pixel centres at integers)
  visible    float32 [K]        1 = joint annotated (trained on and scored), 0 = missing
  occluded   float32 [K]        1 = annotated but hidden (MPII's is_visible == 0); informative only
  center     float32 [2]        person centre (x, y), 0-based pixels
  scale      float32 []         person box side / 200 px (hourglass convention, already x1.25)
  head_box   float32 [4]        x1, y1, x2, y2 of the head (0 where the data set has none)
  norm_size  float32 []         PCK normaliser: MPII head size 0.6 x head-box diagonal,
                                LSP/FLIC torso size
  id         int64   []         person index within the split (stable, 0-based)
"""
