"""AUTOMATIC1111 compatibility, in one place: prompt syntax and 75-token chunking, infotext, sampler
names and schedules, model/LoRA hashes, and CLIP's BPE vocabulary (shipped, so token counts are exact
offline). The prompt composer and the generator both build on it; neither imports the other.
"""
