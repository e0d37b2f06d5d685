"""pbrforge.datagen"""
