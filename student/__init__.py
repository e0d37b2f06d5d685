"""pbrforge.student"""
