from enum import StrEnum


class PredictFormat(StrEnum):
    FHIR = "fhir"
    JSON = "json"

    def __str__(self) -> str:
        return str(self.value)
