"""
The data path: data connections (legs), the pump between two legs (splice(2) for clear ones), the passive port pool and active-mode connects.
"""
