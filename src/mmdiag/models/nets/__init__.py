"""models/nets"""
