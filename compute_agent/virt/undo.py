"""What one spawn, rescue or migration step created, so that its failure
removes exactly that and nothing it found already there."""


class Undo:
    def __init__(self):
        self.files, self.vifs, self.volumes = [], [], []
        self.filters = []        # network_info whose filters were defined
        self.dir = None          # the instance dir, if this call made it
        self.domain = False      # True once this call defined the domain
