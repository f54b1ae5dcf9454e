"""Source media into arrays: the one documented conversion of image bytes to RGB pixels and of audio bytes to exact samples, used by modalities, codecs and loaders alike."""
