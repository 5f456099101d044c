"""HTTP routes: one APIRouter per module (classify, health, model, admin)."""
