"""models/layers"""
