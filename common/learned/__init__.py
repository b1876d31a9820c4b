"""Learned feature codecs: CompressAI's scale hyperprior on packed feature frames.

``model`` holds the network (a 1-channel `ScaleHyperprior`) and its coding
path, ``payload`` the byte layout of a coded frame, ``checkpoint`` the safe
(safetensors + JSON) checkpoint format, ``data`` the training frames and
``training`` the rate-distortion training loop used by ``splitfc train-codec``.
"""
