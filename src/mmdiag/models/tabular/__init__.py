"""models/tabular"""
