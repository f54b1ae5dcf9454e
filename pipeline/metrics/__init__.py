"""Distortion measured from the decoded payload against the source: PSNR and MS-SSIM for images
(:mod:`.image`), SNR, SI-SDR, PESQ and STOI for audio (:mod:`.audio`).
"""
