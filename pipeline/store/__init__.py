"""Where finished work lands: set folders and shard names (:mod:`.layout`), deterministic tars written
under a temporary name and renamed (:mod:`.writer`), local or object storage (:mod:`.storage`).
"""
