require "rails_helper"

RSpec.describe User, type: :model do
  it "is valid with a name" do
    expect(User.new(name: "Ada")).to be_valid
  end

  it "█
