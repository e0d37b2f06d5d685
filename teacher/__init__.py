"""pbrforge.teacher"""
