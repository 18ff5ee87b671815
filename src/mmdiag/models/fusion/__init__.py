"""models/fusion"""
