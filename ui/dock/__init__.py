"""dock"""
