blueprints: list = []
